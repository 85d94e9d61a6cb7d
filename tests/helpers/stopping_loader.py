"""A batch stream that simulates a killed run, for the resume tests."""

from __future__ import annotations

from dynroute.data.loader import BatchLoader


class StoppingLoader(BatchLoader):
    """Raises KeyboardInterrupt ("kills" the run or sweep) after ``stop_after`` batches."""

    stop_after: int | None = None

    def next_batch(self):
        if self.stop_after is not None:
            if self.stop_after == 0:
                raise KeyboardInterrupt
            self.stop_after -= 1
        return super().next_batch()
