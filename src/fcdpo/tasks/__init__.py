"""The reasoning tasks: math word problems and first-order logic."""

from fcdpo.tasks.base import Problem, Task, load_problems, save_problems


def get_task(name: str) -> Task:
    """The task called `name` ("math" or "fol")."""
    if name == "math":
        from fcdpo.tasks.math import MathTask

        return MathTask()
    if name == "fol":
        from fcdpo.tasks.fol import FolTask

        return FolTask()
    raise ValueError(f"unknown task {name!r}; expected 'math' or 'fol'")


__all__ = ["Problem", "Task", "get_task", "load_problems", "save_problems"]
