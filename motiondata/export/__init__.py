"""Writers that hand a motiondata store to other ecosystems: ``lerobot`` (LeRobot v3.0), see ``docs/export.md``."""
