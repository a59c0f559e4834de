"""A tiny test helper shared by the polyglot clients: counts checks and
prints the closing line `N passed, N failed`."""

import sys
import traceback

passed = 0
failed = 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {name}")
    except Exception:  # noqa: BLE001 - report every failure
        failed += 1
        print(f"FAIL {name}")
        traceback.print_exc()


def done():
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


def expect(got, want):
    if got != want:
        raise AssertionError(f"got {got!r}, want {want!r}")
