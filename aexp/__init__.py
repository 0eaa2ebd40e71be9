"""aexp: config-driven autoencoder experiments (train, render, evaluate). From Python:
`aexp.compose`, `aexp.train`, `aexp.load_run`, `aexp.evaluate`, `aexp.load_safetensors`
(aexp/api.py)."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """`${aexp.run_id:}`: a random 4-hex-digit tag, drawn once per config (cached like Hydra's
    `${now:}` and copied with it into sweep and cluster-job configs). The default run and sweep
    folders end in it, so two runs started in the same second get two folders, not one."""
    import secrets

    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("aexp.run_id"):
        OmegaConf.register_new_resolver("aexp.run_id", lambda: secrets.token_hex(2), use_cache=True)


_register_resolvers()

# The Python API lives in aexp/api.py (the top layer) and is imported on first use: `import aexp`
# stays without torch and Hydra, which `aexp render` and `aexp explore` (importing the package
# too) start without.
API = ("compose", "train", "load_run", "evaluate", "load_safetensors")


def __getattr__(name: str):
    if name in API:
        from aexp import api
        return getattr(api, name)
    raise AttributeError(f"module 'aexp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
