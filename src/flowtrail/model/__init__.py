"""The flow model: Cilium's flow.proto as Hubble prints it, and its Arrow batch form."""
