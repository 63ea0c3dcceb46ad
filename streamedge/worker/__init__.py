"""``streamedge worker``: serve models to gateways over MQTT (edge tier) and OIP v2 HTTP."""
