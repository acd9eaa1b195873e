"""The data holder's machine in the Deployment Engine: its SuperNode process, enrollment with a
one-time token, and the warm ClientApp executor (the client's Flower patches live here)."""
