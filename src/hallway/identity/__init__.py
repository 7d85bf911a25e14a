"""Pure identity resolution: hallway-v1 token table, IRK address cache, static keys, resolver."""
