"""make verify-azure: prove a deployment. Against the system `azd up` deployed, drive a REST workload
through the producer, wait until the consumer's projection has caught up, then check every
guarantee the end-to-end test checks locally: each change reached the projection once and in order
(one inbox mark per committed event, the status history following the producer's events, the
projection equal to the entity).

    uv run python tools/verify_azure.py [--orders 20] [--commands 5] [--wait 300] [--seed N]

Settings come from the environment, or from `azd env get-values` when azd is installed:
SERVICE_PRODUCER_URI, CONSUMER_COSMOS_ENDPOINT and EVENTFLOW_API_CLIENT_ID (outputs of
infra/bicep/main.bicep). Calls to the producer send a token for the API from DefaultAzureCredential
(`api://<client id>/.default`: the signed-in user, or the identity this runs as, needs the app role
Orders.ReadWrite; docs/operations.md); reads of the consumer's store use the same credential (e.g.
after `az login` / `azd auth login`; it needs Cosmos DB data-plane read access). Exit status: 0 when every guarantee held,
1 when one broke, 2 when there is no deployment or no credentials (nothing was sent anywhere).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any

from eventflow_testing.e2e import (
    GuaranteeBrokenError,
    Load,
    check_derived_orders,
    check_orders,
    require,
)

NEEDED = ("SERVICE_PRODUCER_URI", "CONSUMER_COSMOS_ENDPOINT", "EVENTFLOW_API_CLIENT_ID")
DATABASE, SUMMARIES = "eventflow", "order-summaries"


class NotDeployedError(Exception):
    """No deployment or no credentials: nothing to verify."""


def deployment() -> dict[str, str]:
    """The deployment's settings, from the environment or the current azd environment. Touches no
    network: azd reads its local .azure folder."""
    values = {name: os.environ[name] for name in NEEDED if os.environ.get(name)}
    azd = shutil.which("azd")
    if len(values) < len(NEEDED) and azd:
        listed = subprocess.run(
            [azd, "env", "get-values"], capture_output=True, text=True, check=False
        )
        for line in listed.stdout.splitlines():
            name, _, value = line.partition("=")
            if name in NEEDED and name not in values:
                values[name] = value.strip().strip('"')
    missing = [name for name in NEEDED if not values.get(name)]
    if missing:
        raise NotDeployedError(
            f"no deployed azd environment: {', '.join(missing)} not set (run `azd up`, or set them)"
        )
    return values


async def verify(
    values: dict[str, str], orders: int, commands: int, wait: float, seed: int
) -> dict[str, Any]:
    from azure.core.exceptions import ClientAuthenticationError  # noqa: PLC0415
    from azure.cosmos.aio import CosmosClient  # noqa: PLC0415
    from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

    producer = values["SERVICE_PRODUCER_URI"].rstrip("/")
    async with DefaultAzureCredential() as credential:
        try:
            await credential.get_token("https://cosmos.azure.com/.default")
            api = await credential.get_token(f"api://{values['EVENTFLOW_API_CLIENT_ID']}/.default")
        except ClientAuthenticationError as error:
            raise NotDeployedError(
                f"no Azure credentials: {error.message.splitlines()[0]}"
            ) from error
        async with CosmosClient(
            values["CONSUMER_COSMOS_ENDPOINT"], credential=credential
        ) as cosmos:
            summaries = cosmos.get_database_client(DATABASE).get_container_client(SUMMARIES)
            headers = {"Authorization": f"Bearer {api.token}"}
            load = Load()
            await load.run(producer, orders, commands, random.Random(seed), headers=headers)
            started = time.monotonic()
            await caught_up(producer, load.orders, summaries, wait, headers)

            async def summary_of(order_id: str) -> dict[str, Any]:
                document: dict[str, Any] = await summaries.read_item(
                    order_id, partition_key=order_id
                )
                return document

            # The deployment's write pattern, as the API shows it: entity-first stores no events.
            derived = await keeps_no_events(producer, load.orders[0], headers)
            if derived:
                handled = await check_derived_orders(
                    producer, load.statuses, summary_of, summaries, headers
                )
            else:
                handled = await check_orders(producer, load.orders, summary_of, summaries, headers)
    require(
        handled == load.committed_events or (derived and handled <= load.committed_events),
        f"{handled} events handled, {load.committed_events} committed",
    )
    return {"orders": len(load.orders), "events_committed": load.committed_events, "events_handled": handled,
            "accepted": dict(load.accepted), "rejected": dict(load.rejected),
            "catch_up_seconds": round(time.monotonic() - started, 1), "seed": seed}  # fmt: skip


async def keeps_no_events(producer: str, order_id: str, headers: dict[str, str]) -> bool:
    """Whether the producer runs the entity-first write pattern (its /events answers events-not-kept)."""
    import httpx  # noqa: PLC0415

    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        answer = await client.get(f"{producer}/orders/{order_id}/events")
    return answer.status_code == 404 and answer.json().get("type", "").endswith(":events-not-kept")


async def caught_up(
    producer: str, orders: list[str], summaries: Any, wait: float, headers: dict[str, str]
) -> None:
    """Poll (with a deadline) until every order's projection reached the producer's version."""
    import httpx  # noqa: PLC0415
    from azure.cosmos.exceptions import CosmosResourceNotFoundError  # noqa: PLC0415

    deadline = time.monotonic() + wait
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        versions = {
            o: (await client.get(f"{producer}/orders/{o}")).json()["version"] for o in orders
        }
    pending = set(orders)
    while pending:
        for order_id in list(pending):
            try:
                summary = await summaries.read_item(order_id, partition_key=order_id)
            except CosmosResourceNotFoundError:
                continue
            if summary["last_sequence"] >= versions[order_id]:
                pending.discard(order_id)
        require(
            time.monotonic() < deadline, f"{len(pending)} orders never caught up within {wait} s"
        )
        await asyncio.sleep(2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--commands", type=int, default=5)
    parser.add_argument("--wait", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(10**6))
    args = parser.parse_args()
    try:
        values = deployment()
        report = asyncio.run(verify(values, args.orders, args.commands, args.wait, args.seed))
    except NotDeployedError as error:
        sys.stderr.write(f"verify-azure: {error}; nothing was verified\n")
        sys.exit(2)
    except GuaranteeBrokenError as error:
        sys.stderr.write(f"verify-azure: a guarantee broke: {error}\n")
        sys.exit(1)
    sys.stdout.write("".join(f"{key}: {value}\n" for key, value in report.items()))
    sys.stdout.write("every guarantee held\n")


if __name__ == "__main__":
    main()
