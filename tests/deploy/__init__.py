"""Tests of deploy/: the compose file, its images' commands, and the federation it runs."""
