"""The mesh file (``microhive.yaml``): its schema, loading and the starter template."""

from microhive.config.loader import DEFAULT_FILE, ENV_PREFIX, find_config, load_config, parse_config
from microhive.config.model import (
    SERVICE_KINDS,
    BusSpec,
    MeshConfig,
    ModelSpec,
    RoleSpec,
    SecuritySpec,
    ServiceSpec,
    StoresSpec,
    TracingSpec,
)

__all__ = [
    "DEFAULT_FILE",
    "ENV_PREFIX",
    "SERVICE_KINDS",
    "BusSpec",
    "MeshConfig",
    "ModelSpec",
    "RoleSpec",
    "SecuritySpec",
    "ServiceSpec",
    "StoresSpec",
    "TracingSpec",
    "find_config",
    "load_config",
    "parse_config",
]
