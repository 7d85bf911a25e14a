"""``hallway venue``: one answer for a venue of many scanners, through an MQTT broker.

``arbiter`` is the pure room choice; ``homeassistant`` builds MQTT discovery messages;
``service`` wires the broker, the arbiter, the hub, the socket server and mDNS together.
"""
