"""Host-service entry points: run the ib or trainer actor as a standalone process on another machine
(`python -m hosts.ib` next to IB Gateway, `python -m hosts.training` on a GPU host), as clients of a
remote NATS_URL. They push events like any actor: no HTTP, no polling."""
