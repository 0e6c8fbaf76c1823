"""The stages, one module each (a pair sharing a build function shares one); no stage imports another."""
