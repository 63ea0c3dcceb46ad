"""Publish temperature/humidity (QoS 1) and power (QoS 0) readings to any MQTT broker.

python samples/sensor_publisher.py --host 127.0.0.1 --port 1883 --devices 6 --hz 5
"""

from __future__ import annotations

import argparse
import asyncio

from streamedge.devices.publishers import run_sensors


def main() -> None:
    """Parse arguments and publish until the duration ends (or Ctrl-C)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="streamedge")
    parser.add_argument("--devices", type=int, default=6)
    parser.add_argument("--hz", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--anomaly-p", type=float, default=0.01)
    args = parser.parse_args()
    stats = asyncio.run(
        run_sensors(
            host=args.host,
            port=args.port,
            prefix=args.prefix,
            devices=args.devices,
            hz=args.hz,
            duration=args.duration,
            anomaly_p=args.anomaly_p,
        )
    )
    print(f"published {stats.messages} readings ({stats.bytes} bytes), {stats.errors} errors")


if __name__ == "__main__":
    main()
