# ---------------------------------------------------------------------------------------
# Project and naming
# ---------------------------------------------------------------------------------------

variable "project_id" {
  description = "ID of the Google Cloud project to deploy into (billing enabled)."
  type        = string
}

variable "region" {
  description = "Region for every regional resource: network, GPU VMs, Cloud SQL, Memorystore, bucket, Artifact Registry. Pick one whose zones offer var.gpu_type."
  type        = string
  default     = "us-central1"
}

variable "zones" {
  description = "Zones of var.region the instance group spreads its GPU VMs over; each must offer the chosen GPU (L4: us-central1-a/b/c). Rolling updates surge by one VM per zone, so the regional GPU quota must cover max_replicas + length(zones)."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-b", "us-central1-c"]

  validation {
    condition     = length(var.zones) > 0
    error_message = "At least one zone is required."
  }
}

variable "name" {
  description = "Prefix of every resource name (lowercase letters, digits and hyphens)."
  type        = string
  default     = "rollcall"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Labels added to every resource that supports them."
  type        = map(string)
  default     = {}
}

variable "enable_apis" {
  description = "Enable the Google APIs this stack uses (compute, sqladmin, redis, secretmanager, servicenetworking, artifactregistry, iam, logging, monitoring, dns). Turn off when the project's APIs are managed elsewhere."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Protect the database from `terraform destroy` and refuse to delete a non-empty photo bucket. Set to false and apply before tearing the stack down."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------
# Public endpoint
# ---------------------------------------------------------------------------------------

variable "domain" {
  description = "Fully qualified domain name Rollcall is served on (e.g. rollcall.example.com). Its A record must point at the load balancer's IP (output load_balancer_ip) for the Google-managed certificate to be issued."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain))
    error_message = "domain must be a lowercase fully qualified domain name without a trailing dot."
  }
}

variable "dns_managed_zone" {
  description = "Name of a Cloud DNS managed zone in this project that holds var.domain. When set, the A record is created here; when null, create it at your DNS provider."
  type        = string
  default     = null
}

variable "ssh_source_ranges" {
  description = "CIDR ranges allowed to reach the VMs on port 22. The VMs have no public IP, so the default is Identity-Aware Proxy's TCP forwarding range (`gcloud compute ssh --tunnel-through-iap`). Use an empty list to close SSH."
  type        = list(string)
  default     = ["35.235.240.0/20"]

  validation {
    condition     = alltrue([for r in var.ssh_source_ranges : can(cidrnetmask(r)) && !endswith(r, "/0")])
    error_message = "ssh_source_ranges must be IPv4 CIDR ranges, and never the whole Internet."
  }
}

variable "subnet_cidr" {
  description = "Primary IPv4 range of the subnet the GPU VMs live in."
  type        = string
  default     = "10.20.0.0/20"
}

variable "private_services_prefix_length" {
  description = "Prefix length of the range reserved for private services access (Cloud SQL and Memorystore private IPs)."
  type        = number
  default     = 20
}

# ---------------------------------------------------------------------------------------
# GPU instances
# ---------------------------------------------------------------------------------------

variable "image" {
  description = "Full reference of the Rollcall CUDA image the VMs run, built from docker/Dockerfile.cuda and pushed (e.g. us-central1-docker.pkg.dev/PROJECT/rollcall/rollcall:0.1.0-cuda; see output artifact_registry). Prefer an immutable tag or a digest."
  type        = string
}

variable "machine_type" {
  description = "Machine type of each replica. g2-standard-4 carries one NVIDIA L4. For a T4 use an N1 type (n1-standard-4) with gpu_type = \"nvidia-tesla-t4\" and gpu_count = 1."
  type        = string
  default     = "g2-standard-4"
}

variable "gpu_type" {
  description = "Accelerator type attached when gpu_count > 0 (nvidia-tesla-t4, nvidia-l4, ...)."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_count" {
  description = "GPUs to attach explicitly. Keep 0 for accelerator-optimized machine types (g2-*, a2-*), which come with their GPUs; set 1 or more for N1 machine types."
  type        = number
  default     = 0

  validation {
    condition     = var.gpu_count >= 0 && floor(var.gpu_count) == var.gpu_count
    error_message = "gpu_count must be a whole number >= 0."
  }
}

variable "spot" {
  description = "Run the replicas as Spot VMs (roughly 60-70% cheaper, can be reclaimed at any time; the instance group recreates them). Keep false for predictable capacity."
  type        = bool
  default     = false
}

variable "min_replicas" {
  description = "Fewest GPU VMs the autoscaler keeps running."
  type        = number
  default     = 1

  validation {
    condition     = var.min_replicas >= 1
    error_message = "min_replicas must be at least 1."
  }
}

variable "max_replicas" {
  description = "Most GPU VMs the autoscaler may run (mind the regional GPU quota)."
  type        = number
  default     = 4
}

variable "target_rps_per_replica" {
  description = "Requests per second one replica is expected to serve. The load balancer's RATE capacity and the autoscaler's load-balancing target (80% of it) both derive from this; measure with the load generator and adjust."
  type        = number
  default     = 40
}

variable "cos_image_family" {
  description = "Container-Optimized OS image family (project cos-cloud) of the VMs. The NVIDIA driver is installed at boot with `cos-extensions install gpu`."
  type        = string
  default     = "cos-stable"
}

variable "boot_disk_size_gb" {
  description = "Boot disk size of each VM in GB (holds the CUDA image, about 4 GB, and the driver)."
  type        = number
  default     = 50
}

variable "cloud_sql_proxy_image" {
  description = "Cloud SQL Auth Proxy (v2) image run beside Rollcall on every VM; it connects to the instance's private IP with mTLS and IAM authorisation."
  type        = string
  default     = "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.21.0"
}

variable "rust_log" {
  description = "RUST_LOG filter of the server."
  type        = string
  default     = "info"
}

variable "rollcall_env" {
  description = "Extra non-secret environment for the server, e.g. { ROLLCALL_MAX_BATCH = \"32\", ROLLCALL_DEDUPE_WINDOW_SECS = \"300\" }. Secrets never go here: they come from Secret Manager."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([for k in keys(var.rollcall_env) : can(regex("^[A-Z][A-Z0-9_]*$", k)) && !contains(
      ["DATABASE_URL", "REDIS_URL", "ROLLCALL_ADMIN_KEY", "ROLLCALL_BIND", "ROLLCALL_STORAGE_URL"], k
    )])
    error_message = "rollcall_env keys must be upper-case environment names, and may not override DATABASE_URL, REDIS_URL, ROLLCALL_ADMIN_KEY, ROLLCALL_BIND or ROLLCALL_STORAGE_URL."
  }
}

# ---------------------------------------------------------------------------------------
# Cloud SQL for PostgreSQL
# ---------------------------------------------------------------------------------------

variable "db_version" {
  description = "Cloud SQL database version (the latest major; docker/compose.yaml runs the same)."
  type        = string
  default     = "POSTGRES_18"
}

variable "db_tier" {
  description = "Cloud SQL machine tier (Enterprise edition). db-custom-1-3840 = 1 vCPU, 3.75 GB."
  type        = string
  default     = "db-custom-1-3840"
}

variable "db_availability_type" {
  description = "ZONAL (one instance) or REGIONAL (high availability with a standby in another zone, about twice the price)."
  type        = string
  default     = "ZONAL"

  validation {
    condition     = contains(["ZONAL", "REGIONAL"], var.db_availability_type)
    error_message = "db_availability_type must be ZONAL or REGIONAL."
  }
}

variable "db_disk_size_gb" {
  description = "Initial SSD size of the database in GB; it grows automatically."
  type        = number
  default     = 20
}

variable "db_backup_retention_count" {
  description = "Number of daily automated backups kept."
  type        = number
  default     = 14
}

variable "db_log_retention_days" {
  description = "Days of write-ahead log kept for point-in-time recovery (1-7 for Enterprise edition)."
  type        = number
  default     = 7

  validation {
    condition     = var.db_log_retention_days >= 1 && var.db_log_retention_days <= 7
    error_message = "db_log_retention_days must be between 1 and 7."
  }
}

# ---------------------------------------------------------------------------------------
# Memorystore for Redis
# ---------------------------------------------------------------------------------------

variable "redis_tier" {
  description = "Memorystore tier: BASIC (single node; Redis only holds derived data Rollcall rebuilds from Postgres) or STANDARD_HA (replicated)."
  type        = string
  default     = "BASIC"

  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.redis_tier)
    error_message = "redis_tier must be BASIC or STANDARD_HA."
  }
}

variable "redis_memory_size_gb" {
  description = "Memorystore capacity in GB (128-D embeddings take about 0.6 KB each, so 1 GB mirrors well over a million faces)."
  type        = number
  default     = 1
}

variable "redis_version" {
  description = "Memorystore Redis version."
  type        = string
  default     = "REDIS_7_2"
}

# ---------------------------------------------------------------------------------------
# Photo bucket
# ---------------------------------------------------------------------------------------

variable "photos_bucket_name" {
  description = "Globally unique name of the photo bucket. Default: <project_id>-<name>-photos."
  type        = string
  default     = null
}

variable "access_log_retention_days" {
  description = "Days the photo bucket's access logs are kept."
  type        = number
  default     = 365
}

variable "photos_noncurrent_retention_days" {
  description = "Days a deleted or overwritten photo is kept as a noncurrent version before it is purged for good. Deleting a user deletes their photos, so keep this short: it bounds how long biometric data survives an erasure request."
  type        = number
  default     = 7
}
