import inspect

from dreambooth_job.events import JobObserver, ObserverGroup, TrainProgress


class Recorder(JobObserver):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("_") or name == "calls" or not callable(attr):
            return attr
        return lambda *a, **k: object.__getattribute__(self, "calls").append((name, a, k))


def test_group_forwards_every_event_to_every_observer_in_order():
    first, second = Recorder(), Recorder()
    group = ObserverGroup(first, second)
    progress = TrainProgress(1, 2, 0.5, 0.3, 0.2, 1e-5, 3.0, 6.0, 0.3)
    events = {name for name, _ in inspect.getmembers(JobObserver, inspect.isfunction)
              if not name.startswith("_")}
    group.phase_started("train")
    group.phase_finished("train", 1.5)
    group.train_progress(progress)
    group.class_images(generated=1, reused=2)
    group.transfer(direction="upload", num_bytes=3, objects=1)
    group.storage_retry()
    group.checkpoint_written(step=4)
    group.resumed(step=4)
    group.evaluation({"dino": 0.5})
    group.notify_failed()
    group.finished(exit_code=0)
    assert {name for name, _, _ in first.calls} == events
    assert first.calls == second.calls
    assert ("class_images", (), {"generated": 1, "reused": 2}) in first.calls
