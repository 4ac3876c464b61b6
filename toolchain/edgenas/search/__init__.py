"""Search methods over a space, under a target's budgets: NACHOS (nachos.py) with pymoo NSGA-II."""
