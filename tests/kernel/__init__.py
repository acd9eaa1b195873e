"""Tests of the kernel (fedge/)."""
