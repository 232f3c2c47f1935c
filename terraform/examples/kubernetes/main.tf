# A Levee cluster on an existing Kubernetes cluster, with the levee-kubernetes module,
# pointed at existing ScyllaDB and Kafka clusters. See README.md.

terraform {
  required_version = ">= 1.9.0"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.2"
    }
  }
}

provider "kubernetes" {
  config_path    = pathexpand(var.kubeconfig_path)
  config_context = var.kube_context
}

module "levee" {
  source = "../../modules/levee-kubernetes"

  namespace = var.namespace
  image     = var.image
  region    = var.region

  cql_contact_points      = var.cql_contact_points
  keyspace                = var.keyspace
  cql_replication         = { class = "network_topology", factors = { (var.region) = var.cql_replication_factor } }
  kafka_bootstrap_servers = var.kafka_bootstrap_servers
  kafka_topic             = var.kafka_topic
  kafka_replication       = var.kafka_replication

  cluster_key = var.cluster_key
  admin_token = var.admin_token

  min_nodes   = var.min_nodes
  max_nodes   = var.max_nodes
  load_target = var.load_target

  client_addressing        = var.client_addressing
  load_balancer_ips        = var.load_balancer_ips
  admin_allowed_namespaces = var.admin_allowed_namespaces
  data_volume_size         = var.data_volume_size
}
