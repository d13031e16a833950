"""A thin shim for tools and habits that expect a setup.py at the top of the repository
(`python setup.py --version`, older pip / IDE integrations). Everything is configured in
pyproject.toml; install with `pip install .` (or `pip install -e '.[cpu,test]'`).
"""
from setuptools import setup

setup()
