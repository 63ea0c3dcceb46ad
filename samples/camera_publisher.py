"""Publish JPEG frames from sample cameras to any MQTT broker.

    python samples/camera_publisher.py --host 127.0.0.1 --port 1883 --devices 3 --fps 5
    python samples/camera_publisher.py --video path/to/vtest.avi

Without --video the cameras watch streamedge's generated scene.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from streamedge.devices.publishers import run_cameras


def main() -> None:
    """Parse arguments and publish until the duration ends (or Ctrl-C)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="streamedge")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--video", type=Path, default=None)
    args = parser.parse_args()
    stats = asyncio.run(
        run_cameras(
            host=args.host,
            port=args.port,
            prefix=args.prefix,
            devices=args.devices,
            fps=args.fps,
            duration=args.duration,
            video=args.video,
        )
    )
    print(f"published {stats.messages} frames ({stats.bytes} bytes), {stats.errors} errors")


if __name__ == "__main__":
    main()
