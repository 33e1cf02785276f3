"""The architectures, one file each, and the registry that names their configurations."""
from minivit.models.registry import create_model, list_models, register_model  # noqa: F401
