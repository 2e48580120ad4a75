from pathlib import Path

from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from pipeline.cli.deploy import ensure_pools


class RacingClient:
    """The pool is missing when read, then a worker creates it before we do."""

    def __init__(self):
        self.created = []

    def read_work_pool(self, name):
        raise ObjectNotFound(http_exc=None)

    def create_work_pool(self, pool):
        if pool.name == "raced":
            raise ObjectAlreadyExists(http_exc=None)
        self.created.append(pool.name)


def test_a_pool_created_meanwhile_by_a_worker_is_not_an_error():
    client = RacingClient()
    pools = [{"name": "raced", "type": "process"}, {"name": "fresh", "type": "process"}]
    assert ensure_pools(client, pools, Path("deploy")) == ["fresh"]
    assert client.created == ["fresh"]
