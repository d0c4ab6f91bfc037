"""Beyond one engine: replica pools, engines in child processes, Ray actors."""
