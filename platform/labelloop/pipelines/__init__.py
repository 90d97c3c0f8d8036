"""Retraining that runs itself: pipeline runs, triggers (schedule, webhooks, API), the
decision what a run does next, and the hand-off to the workers."""
