"""The named choices of training options, apart from the code that implements them.

``TrainConfig`` (and so the command line generated from it) lists these without importing
torch; ``dynroute.train.strategies`` implements them and checks that both agree.
"""

#: Training strategies (docs/method.md §4).
STRATEGY_NAMES = ("static", "actor", "critic", "multi-exit")
#: Critic targets (docs/method.md §4.3) and the error measured inside them.
CRITIC_TARGETS = ("pragmatic", "optimistic")
ERROR_MEASURES = ("cross-entropy", "classification")
#: Exit-weight schedules and distillation teachers (``dynroute.train.recipes``).
WEIGHT_SCHEDULES = ("constant", "ramp")
TEACHERS = ("deepest", "ensemble")
