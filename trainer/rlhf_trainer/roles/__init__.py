"""The roles of an RLHF job as plain classes; a backend runs them in-process or as Ray actors.

actor (policy, DeepSpeed), critic (value model, ppo), reference (frozen policy for the KL),
reward model (scores texts), rollout (generation engine fed with the actor's weights).
"""
