"""Staged rollouts: cohorts in hashed waves, health gates, and the state machine that
drives them (pure), with the database shell that loads observations and applies actions.

``cohort``, ``gates`` and ``engine`` are pure (time injected, no I/O); ``observe``,
``service`` and ``queries`` talk to the database; ``tables`` holds the schema. Imports
nothing: import the module you need.
"""
