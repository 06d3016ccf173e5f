"""The pure monitoring pipeline shared by the workers and ``driftwarden replay``."""
