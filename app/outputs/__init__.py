"""CloudEvents builders for everything driftwarden publishes."""
