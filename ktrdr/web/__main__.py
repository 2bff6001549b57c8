"""`python -m ktrdr.web --host 127.0.0.1 --port 8780`: the operations page as its own process."""

from ktrdr.web.server import main

if __name__ == "__main__":
    raise SystemExit(main())
