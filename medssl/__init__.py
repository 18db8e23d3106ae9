"""medssl: self-supervised pretraining on unlabeled medical images and label-efficient fine-tuning.

The Python API (``medssl/api.py``) is re-exported here lazily, so ``import medssl`` (and the CLI)
stays fast: ``run_study``, ``pretrain``, ``load_encoder``, ``study_config``, ``Encoder``,
``EncoderConfig``.
"""

__version__ = "0.1.0"

_API = ("Encoder", "EncoderConfig", "load_encoder", "pretrain", "run_study", "study_config")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from medssl import api

        return getattr(api, name)
    raise AttributeError(f"module 'medssl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
