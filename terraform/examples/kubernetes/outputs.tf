output "namespace" {
  description = "Namespace of the relays."
  value       = module.levee.namespace
}

output "statefulset_name" {
  description = "The relays' StatefulSet."
  value       = module.levee.statefulset_name
}

output "node_names" {
  description = "Node names that always exist (levee-0 ... levee-(min_nodes-1))."
  value       = module.levee.node_names
}

output "admin_service_dns" {
  description = "In-cluster DNS name of the admin/metrics Service."
  value       = module.levee.admin_service_dns
}

output "hpa_name" {
  description = "The HorizontalPodAutoscaler."
  value       = module.levee.hpa_name
}

output "client_addresses" {
  description = "load_balancer addressing: each node's client address. Empty with host_port addressing."
  value       = module.levee.client_addresses
}

output "addresses_and_fingerprints" {
  description = "How to find the nodes' addresses and certificate fingerprints (not known at plan time)."
  value       = module.levee.addresses_and_fingerprints
}
