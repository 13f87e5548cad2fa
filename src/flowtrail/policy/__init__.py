"""Policy engine: NetworkPolicy and CiliumNetworkPolicy evaluated against connections and flows."""
