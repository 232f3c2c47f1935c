variable "kubeconfig_path" {
  description = "kubeconfig file the kubernetes provider uses."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context of the kubeconfig to use. Null: its current context."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace the module creates for the relays."
  type        = string
  default     = "levee"
}

variable "image" {
  description = "The Levee image built from ops/container/Containerfile and pushed to your registry, pinned by digest, e.g. registry.example.com/levee@sha256:<digest>. No default: there is no public image."
  type        = string
}

variable "region" {
  description = "The Levee region of these nodes: the name of the ScyllaDB data centre they run next to (as the ScyllaDB cluster names it). No default: it must match your ScyllaDB."
  type        = string
}

variable "cql_contact_points" {
  description = "ScyllaDB contact points, host:port. The default is the client Service of a ScyllaCluster named \"scylla\" in namespace \"scylla\" (Scylla Operator)."
  type        = list(string)
  default     = ["scylla-client.scylla.svc:9042"]
}

variable "keyspace" {
  description = "Keyspace of Levee's tables (created if missing)."
  type        = string
  default     = "levee"
}

variable "cql_replication_factor" {
  description = "Copies of each row in the region's data centre when Levee creates the keyspace (NetworkTopologyStrategy)."
  type        = number
  default     = 3
}

variable "kafka_bootstrap_servers" {
  description = "Kafka bootstrap servers, host:port. The default is the bootstrap Service of a Strimzi Kafka named \"my-cluster\" in namespace \"kafka\"."
  type        = list(string)
  default     = ["my-cluster-kafka-bootstrap.kafka.svc:9092"]
}

variable "kafka_topic" {
  description = "Topic of the delivery log (created with 256 partitions if missing)."
  type        = string
  default     = "levee-delivery"
}

variable "kafka_replication" {
  description = "Replication factor of the topic when Levee creates it."
  type        = number
  default     = 3
}

variable "cluster_key" {
  description = "The cluster's shared secret, 64 hex characters: `openssl rand -hex 32`. Pass it as TF_VAR_cluster_key or in an untracked .tfvars file; it ends up in the state, so keep the state encrypted or access-controlled."
  type        = string
  sensitive   = true
}

variable "admin_token" {
  description = "Bearer token for the admin port's changes (the preStop drain hook uses it): `openssl rand -hex 24`. Pass it like cluster_key."
  type        = string
  sensitive   = true
}

variable "min_nodes" {
  description = "Fewest relay nodes."
  type        = number
  default     = 3
}

variable "max_nodes" {
  description = "Most relay nodes the autoscaler may run (with host_port addressing, at most the number of Kubernetes nodes that may run one)."
  type        = number
  default     = 12
}

variable "load_target" {
  description = "Mean levee_load_ratio the autoscaler aims at (1 = every node at its targets)."
  type        = number
  default     = 1
}

variable "client_addressing" {
  description = "\"host_port\" (each relay on its own Kubernetes node, reached at that node's IP) or \"load_balancer\" (one UDP load balancer per relay). See the module's README."
  type        = string
  default     = "host_port"
}

variable "load_balancer_ips" {
  description = "With load_balancer addressing: reserved static IPs, one per possible node (max_nodes). Empty: the load balancers' assigned IPs."
  type        = list(string)
  default     = []
}

variable "admin_allowed_namespaces" {
  description = "Namespaces allowed to reach the admin port (where Prometheus and prometheus-adapter's Prometheus run)."
  type        = list(string)
  default     = ["monitoring"]
}

variable "data_volume_size" {
  description = "A small PersistentVolumeClaim per relay for its self-signed certificate, so its fingerprint survives restarts (the default StorageClass). Null: emptyDir, a new fingerprint per start."
  type        = string
  default     = "64Mi"
}
