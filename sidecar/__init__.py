"""litellm-budget-sidecar: model discovery that survives exhausted LiteLLM budgets."""

from sidecar.app import SidecarApp, create_app
from sidecar.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "SidecarApp", "create_app", "load_settings"]
__version__ = "0.1.0"
