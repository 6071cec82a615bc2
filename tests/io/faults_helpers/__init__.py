"""Programs that tests/io/test_faults.py runs in separate processes."""
