"""mhmodels: multi-hardware mobile models (Keras zoo, QAT, TFLite export, TuNAS-style search).

`zoo/` (specs, weight manifest, cost models) is shipped inside the wheel as the `mhmodels.zoo`
package data so that `mhmodels.build('<entry>')` works from an installed copy too.
"""
from setuptools import setup

setup(
    name="mhmodels",
    version="0.1.0",
    description="Multi-hardware mobile models: Multi-AVG, Multi-MAX and MobileNet baselines, "
    "QAT, TFLite export and a TuNAS-style multi-hardware search.",
    python_requires=">=3.10",
    packages=["mhmodels", "mhmodels.zoo", "search"],
    package_dir={"mhmodels.zoo": "zoo"},
    package_data={"mhmodels.zoo": ["*.json", "models/*.json", "cost_models/*.json"]},
    install_requires=[
        "tensorflow-cpu==2.21.0",
        "numpy",
        "absl-py",
        "ai-edge-litert",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "tensorflow-datasets",
        "importlib_resources",
        "dm-tree",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
    entry_points={"console_scripts": ["mhmodels=mhmodels.__main__:run"]},
)
