"""`python -m hosts.ib`: the ib actor on the machine that runs IB Gateway/TWS, against a remote
NATS_URL. IB_HOST/IB_PORT/IB_CLIENT_ID say where the gateway is; run several with different client
ids and they share `ib.*` requests through the queue group."""

from __future__ import annotations

from actors.ib import IbActor
from hosts._main import run_host


def main(argv: list[str] | None = None) -> int:
    return run_host("ib", IbActor, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
