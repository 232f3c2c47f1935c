# Validation rules that compare variables (min_nodes ≤ max_nodes and the like) need
# Terraform 1.9 or later, or OpenTofu; the repository checks this module with OpenTofu 1.10
# (scripts/check-terraform.sh).
terraform {
  required_version = ">= 1.9.0"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.2"
    }
  }
}
