"""Several processes: process groups, sharding without padding, agreement across ranks, the launcher, remote control, cluster scripts."""
