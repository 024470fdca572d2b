"""Rotations: plans of steps per kind of secret, the steps, their persisted state and
audit, status, incident reports. Built on the control and data planes."""
