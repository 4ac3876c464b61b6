"""A job for the executor tests that a spawned worker imports quickly (no torch, no edgenas.api): it marks itself
started in a folder, then works for a moment, so a test can kill the worker in the middle of it."""
import os
import time
from pathlib import Path


class MarkedSleep:
    def __init__(self, folder: str, seconds: float):
        self.folder, self.seconds = folder, seconds

    def __call__(self, job: int):
        (Path(self.folder) / f"started-{job}-{os.getpid()}").touch()
        time.sleep(self.seconds)
        return {"job": job, "pid": os.getpid()}, None
