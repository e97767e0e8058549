"""Baseline search agents: random, uniform, GP (GPyOpt) and TPE (Optuna).

Each treats one episode as one evaluation of a black-box function of the whole per-step
action vector, played through the same environment (same clamp, same reward) as DDPG.
"""
