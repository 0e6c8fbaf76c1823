"""What stage code calls that never changes what a stage writes (progress shown, faults a drill injects): in no stage's key."""
