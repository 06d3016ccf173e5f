from hypothesis import settings

# Reproducible property tests in CI; a failing example is printed in full.
settings.register_profile("default", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("default")
