# Inputs of the levee-kubernetes module. Grouped as: names and placement, the image and
# resources, client addressing, the Levee settings that go into levee.toml, the secrets,
# storage, and autoscaling.

# ---------------------------------------------------------------------------------------
# Names and placement
# ---------------------------------------------------------------------------------------

variable "name" {
  description = "Name of the StatefulSet; node names are <name>-0, <name>-1, ... and the other objects are named after it."
  type        = string
  default     = "levee"

  validation {
    # A StatefulSet's pods carry a controller-revision-hash label of <name>-<10 chars>,
    # which must fit in 63 characters.
    condition     = can(regex("^[a-z]([a-z0-9-]{0,50}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS label of at most 52 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "namespace" {
  description = "Kubernetes namespace for every object of the module."
  type        = string
  default     = "levee"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.namespace)) && var.namespace != "default"
    error_message = "namespace must be a DNS label (at most 63 characters), and not \"default\": give the relays a namespace of their own."
  }
}

variable "create_namespace" {
  description = "Create the namespace (with Pod Security Admission labels, see README). False: it must exist already."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Extra labels on every object (the module's own app.kubernetes.io/* labels win on a clash)."
  type        = map(string)
  default     = {}
}

variable "node_selector" {
  description = "Node labels a relay pod's node must have, e.g. { \"node.kubernetes.io/instance-type\" = \"c7i.xlarge\" }."
  type        = map(string)
  default     = {}
}

variable "kubernetes_region" {
  description = "Pin the pods to nodes whose topology.kubernetes.io/region label has this value (the cloud region that matches the Levee region). Null: no pin."
  type        = string
  default     = null
}

variable "zones" {
  description = "Pin the pods to nodes in these zones (topology.kubernetes.io/zone). Empty: any zone."
  type        = list(string)
  default     = []
}

variable "zone_spread" {
  description = "Spread the pods evenly over zones (a topology spread constraint with maxSkew 1 that prefers, not requires, balance)."
  type        = bool
  default     = true
}

variable "priority_class_name" {
  description = "PriorityClass of the relay pods, so a scale-out is not starved by less important work. Null: the cluster default."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Image and resources
# ---------------------------------------------------------------------------------------

variable "image" {
  description = "The Levee image (built with ops/container/Containerfile), pinned by digest (repo/levee@sha256:...) or at least by a tag other than latest."
  type        = string

  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.image)) || (can(regex(":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image)) && !endswith(var.image, ":latest"))
    error_message = "image must be pinned: repo/levee@sha256:<digest> (preferred) or repo/levee:<tag> with a tag other than latest."
  }
}

variable "image_pull_policy" {
  description = "imagePullPolicy of the relay container. IfNotPresent: a scale-out does not depend on the registry answering (the image is pinned)."
  type        = string
  default     = "IfNotPresent"

  validation {
    condition     = contains(["Always", "IfNotPresent", "Never"], var.image_pull_policy)
    error_message = "image_pull_policy must be Always, IfNotPresent or Never."
  }
}

variable "image_pull_secrets" {
  description = "Names of existing docker-registry Secrets in the namespace to pull the image with."
  type        = list(string)
  default     = []
}

variable "binary_path" {
  description = "Path of the levee binary in the image (the container's command and the preStop drain hook run it)."
  type        = string
  default     = "/usr/local/bin/levee"
}

variable "run_as_user" {
  description = "UID (and GID, and fsGroup) the relay runs as; the distroless nonroot image's user is 65532."
  type        = number
  default     = 65532

  validation {
    condition     = var.run_as_user >= 1000 && floor(var.run_as_user) == var.run_as_user
    error_message = "run_as_user must be a non-root UID of at least 1000."
  }
}

variable "resources" {
  description = "CPU and memory requests and limits of the relay container (Kubernetes quantities). Requests are what the scheduler reserves; keep the CPU request at what one node is meant to serve, since the autoscaler adds nodes, not CPU."
  type = object({
    requests = map(string)
    limits   = map(string)
  })
  default = {
    requests = { cpu = "1", memory = "1Gi" }
    limits   = { cpu = "2", memory = "2Gi" }
  }

  validation {
    condition = alltrue([
      for m in [var.resources.requests, var.resources.limits] :
      contains(keys(m), "cpu") && contains(keys(m), "memory")
    ])
    error_message = "resources.requests and resources.limits must both name cpu and memory."
  }
}

variable "extra_env" {
  description = "Extra non-secret environment variables of the relay container, e.g. { RUST_LOG = \"info,levee_relay=debug\" }. LEVEE_<FIELD> variables override levee.toml fields; never put secrets here (they would be in the pod spec)."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k in keys(var.extra_env) :
      !contains(["LEVEE_CLUSTER_KEY", "LEVEE_ADMIN_TOKEN", "LEVEE_NODE_NAME", "LEVEE_ADVERTISE_ADDRESS", "HOST_IP"], k)
    ])
    error_message = "extra_env must not set LEVEE_CLUSTER_KEY, LEVEE_ADMIN_TOKEN, LEVEE_NODE_NAME, LEVEE_ADVERTISE_ADDRESS or HOST_IP: the module sets them."
  }
}

# ---------------------------------------------------------------------------------------
# Client addressing (QUIC over UDP)
# ---------------------------------------------------------------------------------------

variable "client_addressing" {
  description = "How clients reach each node's own UDP address (redirects name it). \"host_port\": UDP hostPort on the node, advertised as the node's IP (status.hostIP), one relay per node. \"load_balancer\": one LoadBalancer Service per pod ordinal (max_nodes of them), advertised as the load balancer's IP. See README."
  type        = string
  default     = "host_port"

  validation {
    condition     = contains(["host_port", "load_balancer"], var.client_addressing)
    error_message = "client_addressing must be \"host_port\" or \"load_balancer\"."
  }
}

variable "client_port" {
  description = "UDP port of the QUIC listener: the container port, the hostPort (host_port addressing) and the load balancers' port (load_balancer addressing)."
  type        = number
  default     = 4433

  validation {
    condition     = var.client_port >= 1 && var.client_port <= 65535 && floor(var.client_port) == var.client_port
    error_message = "client_port must be a port number (1-65535)."
  }
}

variable "admin_port" {
  description = "TCP port of the admin listener (GET /metrics, GET /admin/cluster, POST /admin/drain)."
  type        = number
  default     = 9090

  validation {
    condition     = var.admin_port >= 1 && var.admin_port <= 65535 && floor(var.admin_port) == var.admin_port
    error_message = "admin_port must be a port number (1-65535)."
  }
}

variable "load_balancer_ips" {
  description = "load_balancer addressing only: pre-reserved static IPs, one per pod ordinal (index i for <name>-i; at least max_nodes of them). Empty: each load balancer's assigned IP is read after it is created (it must report an IP, not only a hostname)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for ip in var.load_balancer_ips : can(cidrhost("${ip}/32", 0))])
    error_message = "load_balancer_ips must be IPv4 addresses."
  }
}

variable "load_balancer_annotations" {
  description = "load_balancer addressing only: annotations of the per-pod LoadBalancer Services (cloud specific, e.g. to make them network load balancers)."
  type        = map(string)
  default     = {}
}

variable "load_balancer_source_ranges" {
  description = "load_balancer addressing only: client CIDRs the load balancers accept. Empty: any."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.load_balancer_source_ranges : can(cidrnetmask(c)) || can(cidrhost(c, 0))])
    error_message = "load_balancer_source_ranges must be CIDR blocks."
  }
}

variable "network_policy" {
  description = "Create a NetworkPolicy: clients may reach the UDP port from anywhere, the admin port only from admin_allowed_namespaces. Needs a CNI that enforces NetworkPolicy."
  type        = bool
  default     = true
}

variable "admin_allowed_namespaces" {
  description = "Namespaces (by name) whose pods may reach the admin port when network_policy is on: Prometheus, and whoever runs `levee node list`. Kubelet probes are not affected."
  type        = list(string)
  default     = ["monitoring"]
}

variable "cluster_domain" {
  description = "The Kubernetes cluster's DNS domain, for the service DNS names in the outputs."
  type        = string
  default     = "cluster.local"
}

# ---------------------------------------------------------------------------------------
# Levee settings (rendered into levee.toml; see docs/levee.distributed.example.toml)
# ---------------------------------------------------------------------------------------

variable "region" {
  description = "Levee region of these nodes (region in levee.toml): the ScyllaDB data centre they run in, and what shard region pins name."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", var.region))
    error_message = "region must be a data-centre name: letters, digits, '.', '_' and '-'."
  }
}

variable "cluster_name" {
  description = "Levee cluster name (cluster_name): nodes with the same cluster_name and keyspace form one cluster."
  type        = string
  default     = "levee"

  validation {
    condition     = length(var.cluster_name) > 0
    error_message = "cluster_name must not be empty."
  }
}

variable "shards" {
  description = "Number of shards (= Kafka partitions of the topic); the same on every node, fixed once the topic exists."
  type        = number
  default     = 256

  validation {
    condition     = var.shards >= 1 && var.shards <= 65536 && floor(var.shards) == var.shards
    error_message = "shards must be a whole number from 1 to 65536."
  }
}

variable "cql_contact_points" {
  description = "ScyllaDB/Cassandra contact points, host:port (the driver discovers the rest), e.g. [\"scylla-client.scylla.svc:9042\"]. The module does not run ScyllaDB."
  type        = list(string)

  validation {
    condition     = length(var.cql_contact_points) > 0 && alltrue([for c in var.cql_contact_points : can(regex("^[^:\\s]+:[0-9]{1,5}$", c)) || can(regex("^\\[[0-9a-fA-F:]+\\]:[0-9]{1,5}$", c))])
    error_message = "cql_contact_points must list at least one host:port ([v6]:port for IPv6 addresses)."
  }
}

variable "keyspace" {
  description = "CQL keyspace of Levee's tables (created with cql_replication if missing; an existing keyspace is left alone)."
  type        = string
  default     = "levee"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9_]{0,47}$", var.keyspace))
    error_message = "keyspace must be a CQL identifier: a letter, then letters, digits or '_' (at most 48 characters)."
  }
}

variable "cql_local_datacenter" {
  description = "Data centre the CQL driver prefers. Null: the region."
  type        = string
  default     = null
}

variable "cql_replication" {
  description = "Replication of the keyspace when Levee creates it: { class = \"network_topology\", factors = { dc = n } } (production) or { class = \"simple\", factor = n }. Null: network_topology with 3 copies in the region."
  type = object({
    class   = string
    factor  = optional(number)
    factors = optional(map(number))
  })
  default = null

  validation {
    condition = var.cql_replication == null ? true : (
      var.cql_replication.class == "simple" ? coalesce(var.cql_replication.factor, 0) >= 1 : (
        var.cql_replication.class == "network_topology" &&
        length(coalesce(var.cql_replication.factors, {})) > 0 &&
        alltrue([for dc, n in coalesce(var.cql_replication.factors, {}) : n >= 1 && can(regex("^[A-Za-z0-9._-]+$", dc))])
      )
    )
    error_message = "cql_replication: class \"simple\" needs factor >= 1; class \"network_topology\" needs factors, a map of data-centre name to at least 1."
  }
}

variable "cql_request_timeout_ms" {
  description = "How long one CQL statement may take before it fails (ms)."
  type        = number
  default     = 5000

  validation {
    condition     = var.cql_request_timeout_ms >= 100
    error_message = "cql_request_timeout_ms must be at least 100."
  }
}

variable "kafka_bootstrap_servers" {
  description = "Kafka bootstrap servers, host:port, e.g. [\"my-cluster-kafka-bootstrap.kafka.svc:9092\"]. The module does not run Kafka."
  type        = list(string)

  validation {
    condition     = length(var.kafka_bootstrap_servers) > 0 && alltrue([for b in var.kafka_bootstrap_servers : can(regex("^[^:,\\s]+:[0-9]{1,5}$", b)) || can(regex("^\\[[0-9a-fA-F:]+\\]:[0-9]{1,5}$", b))])
    error_message = "kafka_bootstrap_servers must list at least one host:port."
  }
}

variable "kafka_topic" {
  description = "Kafka topic of the delivery log (created with `shards` partitions if missing; an existing one must have exactly that many)."
  type        = string
  default     = "levee-delivery"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,249}$", var.kafka_topic))
    error_message = "kafka_topic must be a Kafka topic name: letters, digits, '.', '_' and '-'."
  }
}

variable "kafka_replication" {
  description = "Replication factor of the topic when Levee creates it."
  type        = number
  default     = 3

  validation {
    condition     = var.kafka_replication >= 1 && floor(var.kafka_replication) == var.kafka_replication
    error_message = "kafka_replication must be a whole number of at least 1."
  }
}

variable "kafka_retention_ms" {
  description = "retention.ms of the topic when Levee creates it: a record not delivered within it is lost. Default 7 days."
  type        = number
  default     = 604800000

  validation {
    condition     = var.kafka_retention_ms >= 3600000
    error_message = "kafka_retention_ms must be at least one hour (3600000)."
  }
}

variable "registration_max_per_s" {
  description = "Most registrations per second one node seats (0: no ceiling). Set when something behind the nodes limits sign-ups; the cluster's ceiling then grows with its node count."
  type        = number
  default     = 0

  validation {
    condition     = var.registration_max_per_s == 0 || var.registration_max_per_s >= 1
    error_message = "registration_max_per_s must be 0 (no ceiling) or at least 1."
  }
}

variable "load_target_wait_s" {
  description = "The waiting-line wait (seconds) at which levee_load_ratio's line part reads 1.0: the longest a newcomer should wait once the autoscaler has caught up."
  type        = number
  default     = 30

  validation {
    condition     = var.load_target_wait_s > 0
    error_message = "load_target_wait_s must be greater than 0."
  }
}

variable "drain_grace_ms" {
  description = "Longest a draining node waits for its clients to move before it leaves (ms). Must fit well inside termination_grace_period_seconds."
  type        = number
  default     = 5000

  validation {
    condition     = var.drain_grace_ms >= 0 && floor(var.drain_grace_ms) == var.drain_grace_ms
    error_message = "drain_grace_ms must be a whole number of milliseconds."
  }
}

variable "termination_grace_period_seconds" {
  description = "How long Kubernetes lets a stopping pod drain (preStop hook, then SIGTERM) before it kills it. Must exceed drain_grace_ms by at least 30 s, for the shard handover and leaving the roster."
  type        = number
  default     = 60

  validation {
    condition     = var.termination_grace_period_seconds * 1000 >= var.drain_grace_ms + 30000
    error_message = "termination_grace_period_seconds must be at least drain_grace_ms/1000 + 30 (default 60 with the 5 s default drain grace)."
  }
}

variable "shard_region_pins" {
  description = "Levee region_pins: shards that may only be placed on nodes of the given regions (the same on every node of the cluster)."
  type = list(object({
    shards  = list(number)
    regions = list(string)
  }))
  default = []

  validation {
    condition     = alltrue([for p in var.shard_region_pins : length(p.regions) > 0 && alltrue([for s in p.shards : s >= 0 && floor(s) == s])])
    error_message = "every shard_region_pins entry needs at least one region and whole, non-negative shard numbers."
  }
}

variable "extra_config" {
  description = "More top-level levee.toml settings, verbatim (e.g. \"admission_overload_wait_ms = 30\\nmax_connections = 20000\"); see docs/levee.example.toml. Top-level `key = value` lines only, no [sections], and never secrets: it goes into a ConfigMap."
  type        = string
  default     = ""

  validation {
    condition     = !can(regex("(?m)^\\s*\\[", var.extra_config)) && !can(regex("(?m)^\\s*(cluster_key|admin_token|node_name|advertise_address|listen|admin_listen|data_dir)\\s*=", var.extra_config))
    error_message = "extra_config may not contain [sections], nor set cluster_key, admin_token, node_name, advertise_address, listen, admin_listen or data_dir (the module sets them)."
  }
}

# ---------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------

variable "cluster_key" {
  description = "The cluster's shared secret (cluster_key): at least 32 hex characters, 64 recommended (`openssl rand -hex 32`), the same on every node. Stored in a Secret (and in the Terraform state: protect it). Leave null when existing_secret_name is set."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.cluster_key == null ? true : (length(var.cluster_key) >= 32 && length(var.cluster_key) % 2 == 0 && can(regex("^[0-9a-fA-F]+$", var.cluster_key)))
    error_message = "cluster_key must be an even number (at least 32) of hex characters, e.g. the output of `openssl rand -hex 32`."
  }
}

variable "admin_token" {
  description = "Bearer token for the admin port's changes (POST /admin/drain, used by the preStop hook). Letters and digits, at least 16, with at least one letter (`openssl rand -base64 24 | tr -d /+=`). Leave null when existing_secret_name is set."
  type        = string
  default     = null
  sensitive   = true

  validation {
    # At least one letter: LEVEE_* values that read as numbers or booleans would be parsed
    # as such, not as the string the admin_token field needs.
    condition     = var.admin_token == null ? true : (can(regex("^[A-Za-z0-9._~-]{16,}$", var.admin_token)) && can(regex("[A-Za-z]", var.admin_token)))
    error_message = "admin_token must be at least 16 characters of A-Z a-z 0-9 . _ ~ -, with at least one letter."
  }
}

variable "existing_secret_name" {
  description = "Name of an existing Secret in the namespace with keys cluster_key and admin_token (made by External Secrets, Sealed Secrets, Vault...), used instead of creating one; the secrets then stay out of the Terraform state. Null: the module creates the Secret from cluster_key and admin_token."
  type        = string
  default     = null

  validation {
    condition     = var.existing_secret_name != null || (var.cluster_key != null && var.admin_token != null)
    error_message = "Set cluster_key and admin_token, or existing_secret_name."
  }
}

# ---------------------------------------------------------------------------------------
# Storage: data_dir holds only the node's TLS certificate
# ---------------------------------------------------------------------------------------

variable "data_volume_size" {
  description = "Size of a PersistentVolumeClaim per pod for data_dir, e.g. \"64Mi\", so a node keeps its self-signed certificate (and fingerprint) across restarts. Null: an emptyDir, and a new certificate at every pod start."
  type        = string
  default     = null
}

variable "data_storage_class" {
  description = "StorageClass of the data PersistentVolumeClaims (data_volume_size set). Null: the cluster default."
  type        = string
  default     = null
}

variable "tls_secret_name" {
  description = "Name of an existing kubernetes.io/tls Secret (tls.crt, tls.key) with a CA-issued certificate for every node, instead of self-signed ones: clients then trust the CA rather than pin per-node fingerprints. Null: self-signed per node."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Autoscaling
# ---------------------------------------------------------------------------------------

variable "min_nodes" {
  description = "Fewest relay nodes (the StatefulSet's initial replicas and the HPA's minReplicas)."
  type        = number
  default     = 3

  validation {
    condition     = var.min_nodes >= 1 && floor(var.min_nodes) == var.min_nodes
    error_message = "min_nodes must be a whole number of at least 1."
  }
}

variable "max_nodes" {
  description = "Most relay nodes (the HPA's maxReplicas; with load_balancer addressing also the number of load balancers)."
  type        = number
  default     = 12

  validation {
    condition     = floor(var.max_nodes) == var.max_nodes && var.max_nodes >= var.min_nodes
    error_message = "max_nodes must be a whole number, at least min_nodes (1 <= min_nodes <= max_nodes)."
  }
  validation {
    condition     = var.client_addressing != "load_balancer" || length(var.load_balancer_ips) == 0 || length(var.load_balancer_ips) >= var.max_nodes
    error_message = "With load_balancer addressing and load_balancer_ips, give at least max_nodes addresses (one per pod ordinal)."
  }
}

variable "autoscaling" {
  description = "Create the HorizontalPodAutoscaler on levee_load_ratio. False: e.g. when KEDA's ScaledObject (which makes its own HPA) drives the StatefulSet instead; see README."
  type        = bool
  default     = true
}

variable "load_target" {
  description = "Target mean levee_load_ratio per pod (the HPA's averageValue): 1.0 means every node at its target. Below 1 keeps headroom."
  type        = number
  default     = 1

  validation {
    condition     = var.load_target >= 0.1 && var.load_target <= 10
    error_message = "load_target must be between 0.1 and 10."
  }
}

variable "scale_up_max_pods" {
  description = "Scale-up policy: at most this many pods added per scale_up_period_seconds (the larger of this and scale_up_max_percent applies)."
  type        = number
  default     = 4

  validation {
    condition     = var.scale_up_max_pods >= 1 && floor(var.scale_up_max_pods) == var.scale_up_max_pods
    error_message = "scale_up_max_pods must be a whole number of at least 1."
  }
}

variable "scale_up_max_percent" {
  description = "Scale-up policy: at most this percentage of the current pods added per scale_up_period_seconds."
  type        = number
  default     = 100

  validation {
    condition     = var.scale_up_max_percent >= 1 && floor(var.scale_up_max_percent) == var.scale_up_max_percent
    error_message = "scale_up_max_percent must be a whole number of at least 1."
  }
}

variable "scale_up_period_seconds" {
  description = "Period of the scale-up policies (s): long enough for new nodes to join, take shards and move clients before more are added on the same signal."
  type        = number
  default     = 60

  validation {
    condition     = var.scale_up_period_seconds >= 1 && var.scale_up_period_seconds <= 1800
    error_message = "scale_up_period_seconds must be between 1 and 1800."
  }
}

variable "scale_down_stabilization_seconds" {
  description = "Scale-down stabilization window (s): the HPA scales in only to the highest recommendation of this window, so a lull between waves does not drain nodes."
  type        = number
  default     = 300

  validation {
    condition     = var.scale_down_stabilization_seconds >= 0 && var.scale_down_stabilization_seconds <= 3600
    error_message = "scale_down_stabilization_seconds must be between 0 and 3600."
  }
}

variable "scale_down_max_pods" {
  description = "Scale-down policy: at most this many pods removed (each drains) per scale_down_period_seconds."
  type        = number
  default     = 1

  validation {
    condition     = var.scale_down_max_pods >= 1 && floor(var.scale_down_max_pods) == var.scale_down_max_pods
    error_message = "scale_down_max_pods must be a whole number of at least 1."
  }
}

variable "scale_down_period_seconds" {
  description = "Period of the scale-down policy (s)."
  type        = number
  default     = 60

  validation {
    condition     = var.scale_down_period_seconds >= 1 && var.scale_down_period_seconds <= 1800
    error_message = "scale_down_period_seconds must be between 1 and 1800."
  }
}
