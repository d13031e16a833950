"""Zoo entries as data (JSON specs, weight manifest, cost models); shipped as mhmodels.zoo."""
