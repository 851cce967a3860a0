"""The official emulators' Config.json files, read unchanged.

Event Hubs: repo Azure/azure-event-hubs-emulator-installer, EventHub-Emulator/Schema/Config-schema.json.
Service Bus: repo Azure/azure-service-bus-emulator-installer, ServiceBus-Emulator/Schema/Config-schema.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_RETENTION = timedelta(
    hours=1
)  # the Event Hubs emulator keeps events 1 h (overview-emulator)


@dataclass(frozen=True)
class HubConfig:
    name: str
    partition_count: int
    consumer_groups: tuple[str, ...]
    retention: timedelta = DEFAULT_RETENTION


@dataclass(frozen=True)
class QueueConfig:
    name: str
    requires_session: bool = False
    requires_duplicate_detection: bool = False
    duplicate_detection_window: timedelta = timedelta(minutes=10)
    max_delivery_count: int = 10
    lock_duration: timedelta = timedelta(minutes=1)
    default_ttl: timedelta = timedelta(hours=1)
    dead_lettering_on_expiration: bool = False
    max_message_size: int = 256 * 1024


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration as the configs use them (PT5M, PT1H, P1D); also hh:mm:ss."""
    match = _DURATION.match(text.strip())
    if match:
        parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
        return timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])
    hours, minutes, seconds = text.split(":")
    return timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds))


def load_eventhubs(path: Path | None) -> list[HubConfig]:
    if path is None:
        return []
    config: dict[str, Any] = json.loads(path.read_text())
    hubs = []
    for namespace in config["UserConfig"]["NamespaceConfig"]:
        for entity in namespace.get("Entities", []):
            groups = ["$default"] + [g["Name"] for g in entity.get("ConsumerGroups", [])]
            retention = entity.get("MessageRetentionInHours")
            hubs.append(
                HubConfig(
                    name=entity["Name"],
                    partition_count=int(entity["PartitionCount"]),
                    consumer_groups=tuple(dict.fromkeys(groups)),
                    retention=timedelta(hours=float(retention)) if retention else DEFAULT_RETENTION,
                )
            )
    return hubs


def load_servicebus(path: Path | None) -> list[QueueConfig]:
    if path is None:
        return []
    config: dict[str, Any] = json.loads(path.read_text())
    queues = []
    for namespace in config["UserConfig"]["Namespaces"]:
        for queue in namespace.get("Queues", []):
            props = queue.get("Properties", {})

            def duration(key: str, default: timedelta, props: dict[str, Any] = props) -> timedelta:
                return parse_duration(props[key]) if props.get(key) else default

            queues.append(
                QueueConfig(
                    name=queue["Name"],
                    requires_session=bool(props.get("RequiresSession", False)),
                    requires_duplicate_detection=bool(
                        props.get("RequiresDuplicateDetection", False)
                    ),
                    duplicate_detection_window=duration(
                        "DuplicateDetectionHistoryTimeWindow", timedelta(minutes=10)
                    ),
                    max_delivery_count=int(props.get("MaxDeliveryCount", 10)),
                    lock_duration=duration("LockDuration", timedelta(minutes=1)),
                    default_ttl=duration("DefaultMessageTimeToLive", timedelta(hours=1)),
                    dead_lettering_on_expiration=bool(
                        props.get("DeadLetteringOnMessageExpiration", False)
                    ),
                )
            )
    return queues
