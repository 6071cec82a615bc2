"""Programs that tests/test_faults.py runs in separate processes."""
