// The wire shapes the console reads (a subset of the OpenAPI document's schemas).

export interface Container {
  id: string;
  name: string;
  image: string;
  status: string;
  status_reason?: string | null;
  ports: string[];
  endpoint?: string | null;
  endpoints?: { replica: number; host: string; host_port: number }[];
  replicas: number;
  created_at: string;
  project_id: string;
  resources?: Record<string, string>;
  usage?: UsageNow | null;
}

export interface Vm {
  id: string;
  name: string;
  status: string;
}

export interface Operation {
  id: string;
  kind: string;
  resource_type: string;
  resource_id: string;
  status: string;
  progress: number;
  error?: { code: string; message: string } | null;
  created_at: string;
  finished_at?: string | null;
}

export interface Wallet {
  currency: string;
  balance: string;
  pending_charges: string;
  available: string;
  status: string;
}

export interface Quota {
  limits: Record<string, number | null>;
  usage: Record<string, number>;
}

export interface Plan {
  id: string;
  name: string;
  model: string;
  currency: string;
  price_per_call?: string | null;
  monthly_price?: string | null;
  included_calls?: number | null;
  overage_price?: string | null;
  rate_limit_per_minute?: number | null;
}

export interface Listing {
  id: string;
  slug: string;
  title: string;
  summary?: string | null;
  description?: string | null;
  category: string;
  tags: string[];
  currency: string;
  price_models: string[];
  plans?: Plan[];
  rating?: { average: number | null; count: number };
  calls_30d?: number;
  published_at?: string | null;
  api_id?: string;
  organisation_id?: string;
  status?: string;
  visibility?: string;
  docs?: Record<string, unknown> | null;
}

// --- APIs, the marketplace's subscriptions and reviews, payouts (the API pages) ---

export interface Deployment {
  id: string;
  number: number;
  image: string;
  environment_keys: string[];
  resources: Record<string, string>;
  replicas: number;
  status: string;
  rollback_of?: string | null;
  operation_id?: string | null;
  error?: { code?: string; message?: string } | null;
  created_at: string;
  finished_at?: string | null;
}

export interface HostedApi {
  id: string;
  name: string;
  slug: string;
  description: string;
  status: string;
  health?: string | null;
  image?: string | null;
  port: number;
  replicas?: number | null;
  health_check_path: string;
  base_path: string;
  endpoint?: string | null;
  container_id?: string | null;
  deployment?: Deployment | null;
  has_openapi: boolean;
  units?: { method: string; path: string; units: number }[];
  units_header?: string | null;
  created_at: string;
}

export interface ApiAccepted {
  message: string;
  api_id: string;
  api: HostedApi;
  deployment?: Deployment | null;
  operation?: Operation | null;
}

export interface ApiCall {
  id: string;
  request_id: string;
  method: string;
  path: string;
  status: number;
  latency_ms: number;
  bytes_in: number;
  bytes_out: number;
  consumer: string;
  units: number;
  price: string;
  created_at: string;
}

export interface ApiLogs {
  api_id: string;
  source: string;
  logs: string;
  items: ApiCall[];
}

export interface OutputLine {
  replica: number;
  time: string;
  line: string;
}

export interface EndpointFigures {
  method: string;
  path: string;
  calls: number;
  errors: number;
  client_errors: number;
  avg_latency_ms: number | null;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
}

export interface ConsumerFigures {
  consumer: string;
  calls: number;
  units: number;
  errors: number;
  client_errors: number;
  amount: string;
}

export interface CallFigures {
  period: string;
  calls: number;
  units: number;
  errors: number;
  client_errors: number;
  error_rate: number | null;
  latency_ms: { avg: number | null; p50: number | null; p95: number | null; p99: number | null };
  endpoints: EndpointFigures[];
  consumers: ConsumerFigures[];
}

export interface SubscriptionKey {
  id: string;
  name: string;
  prefix: string;
  created_at: string;
  expires_at?: string | null;
  revoked_at?: string | null;
  last_used_at?: string | null;
  key?: string;
}

export interface Subscription {
  id: string;
  listing_id: string;
  title: string;
  api_slug: string;
  plan: Plan;
  organisation_id: string;
  status: string;
  period_start: string;
  period_end: string;
  cancel_at_period_end: boolean;
  ended_at?: string | null;
  renews_at?: string | null;
  next_charge?: { amount: string; currency: string; at: string } | null;
  created_at: string;
  keys?: SubscriptionKey[];
}

export interface SubscriptionUsage {
  calls: number;
  units: number;
  errors: number;
  quota: number | null;
  remaining: number | null;
  percent_used: number | null;
  currency: string;
  amount: string;
  charged: string;
  pending: string;
  period_start: string;
  period_end: string;
}

export interface Review {
  id: string;
  listing_id: string;
  stars: number;
  text: string;
  mine: boolean;
  reply: { text: string; replied_at: string } | null;
  created_at: string;
  updated_at: string;
}

export interface Rating {
  average: number | null;
  count: number;
  histogram?: Record<string, number>;
}

export interface Payout {
  id: string;
  organisation_id: string;
  amount: string;
  currency: string;
  status: string;
  method: string;
  destination: string;
  note: string;
  processed_at?: string | null;
  created_at: string;
}

export interface BillingOverview {
  currency: string;
  balance: string;
  available_earnings: string;
  total_revenue: string;
  total_payouts: string;
  pending_payouts: string;
}

export interface PlansSold {
  listing_id: string;
  title: string;
  status: string;
  plans: Plan[];
  subscribers: number;
}

export interface Product {
  id: string;
  sku: string;
  unit: string;
  name: string;
  flavor?: string | null;
  description?: string | null;
  currency: string;
  unit_price: string;
  effective_from?: string | null;
  effective_to?: string | null;
}

export interface HostUsage {
  cpu_cores: number;
  memory_gb: number;
  storage_gb: number;
  instances: number;
}

export interface Host {
  id: string;
  hostname: string;
  driver: string;
  uri: string;
  hypervisor_type: string;
  status: string;
  enabled: boolean;
  cpu_cores: number;
  memory_gb: number;
  memory_mb: number;
  storage_gb: number;
  max_instances: number | null;
  used: HostUsage;
  last_error: string | null;
  last_seen_at: string | null;
}

// --- billing, monitoring and account pages ---------------------------------------

export interface LedgerEntry {
  id: string;
  kind: string;
  amount: string;
  balance_after: string;
  currency: string;
  description?: string | null;
  reference_kind?: string | null;
  reference_id?: string | null;
  created_at: string;
}

export interface Payment {
  id: string;
  organisation_id: string;
  provider: string;
  amount: string;
  currency: string;
  status: string;
  description?: string | null;
  client_secret?: string | null;
  failure_reason?: string | null;
  created_at: string;
  completed_at?: string | null;
}

export interface Invoice {
  id: string;
  number?: string | null;
  organisation_id: string;
  kind: string;
  currency: string;
  period: string;
  status: string;
  subtotal: string;
  total: string;
  credited: string;
  due_at?: string | null;
  paid_at?: string | null;
  finalized_at?: string | null;
  lines?: {
    id: string;
    resource_kind?: string | null;
    resource_name?: string | null;
    meter: string;
    sku: string;
    description?: string | null;
    quantity: string;
    unit: string;
    unit_price: string;
    amount: string;
  }[];
}

export interface QuoteLine {
  item: number;
  type: string;
  name?: string | null;
  count: number;
  sku: string;
  meter: string;
  unit: string;
  quantity: string;
  unit_price: string;
  amount: string;
  currency: string;
}

export interface Quote {
  id: string;
  name: string;
  /** open, accepting, accepted, failed, expired */
  status: string;
  failure_reason?: string | null;
  currency: string;
  hours_per_month: number;
  items: Record<string, unknown>[];
  lines: QuoteLine[];
  monthly_total: string;
  valid_until: string;
  /** What accepting it makes (id null: not made yet). */
  resources?: QuoteResource[];
  created_at: string;
}

export interface QuoteResource {
  item: number;
  type: string;
  name: string;
  id: string | null;
  operation?: { id: string; status: string; url: string } | null;
}

export interface BillingAccount {
  organisation_id: string;
  organisation_kind: string;
  currency: string;
  low_balance_threshold: string;
  margin_percent: string;
  status: string;
}

export interface BillingOverview {
  organisation_id: string;
  currency: string;
  balance: string;
  available_earnings: string;
  total_revenue: string;
  total_charges: string;
  total_top_ups: string;
  total_payouts: string;
  pending_payouts: string;
  period: { start: string; end: string };
}

export interface Organisation {
  id: string;
  name: string;
  slug: string;
  kind: string;
  parent_id?: string | null;
  is_personal: boolean;
  description?: string;
  role?: string | null;
  created_at: string;
}

export interface Member {
  user_id: string;
  organisation_id: string;
  email: string;
  name?: string | null;
  role: string;
  created_at: string;
}

export interface Invitation {
  id: string;
  organisation_id: string;
  email: string;
  role: string;
  created_at: string;
  expires_at: string;
  accepted_at?: string | null;
  token?: string;
}

export interface Project {
  id: string;
  organisation_id: string;
  name: string;
  description: string;
  is_default: boolean;
  created_at: string;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  scopes: string[];
  organisation_id?: string | null;
  created_at: string;
  expires_at?: string | null;
  last_used_at?: string | null;
  revoked_at?: string | null;
  key?: string;
}

export interface AlertRule {
  id: string;
  project_id: string;
  name: string;
  description: string;
  metric: string;
  comparison: string;
  threshold: number;
  duration_seconds: number;
  severity: string;
  resource_kind?: string | null;
  resource_id?: string | null;
  enabled: boolean;
  created_at: string;
}

export interface Alert {
  id: string;
  rule_id?: string | null;
  kind: string;
  name: string;
  resource_kind?: string | null;
  resource_id?: string | null;
  status: string;
  severity: string;
  message: string;
  started_at: string;
  fired_at?: string | null;
  resolved_at?: string | null;
}

export interface Webhook {
  id: string;
  url: string;
  events: string[];
  description: string;
  enabled: boolean;
  created_at: string;
  secret?: string;
}

export interface Delivery {
  id: string;
  event_type: string;
  status: string;
  attempts: number;
  last_status_code?: number | null;
  last_error?: string | null;
  created_at: string;
  delivered_at?: string | null;
}

export interface SignIn {
  id: string;
  created_at: string;
  expires_at: string;
  ip_address?: string | null;
  user_agent?: string | null;
  revoked_at?: string | null;
  current: boolean;
}

/** A VM as GET /vms/{id} gives it (Vm above is the overview's subset). */
/** The collector's last figures of a VM or a container, in their lists. */
export interface UsageNow {
  cpu_usage: number;
  memory_usage: number;
  memory_bytes: number;
  network_io: string;
  net_rx_bps: number;
  net_tx_bps: number;
  sampled_at: string;
}

export interface VmRecord extends Vm {
  usage?: UsageNow | null;
  project_id: string;
  host_id: string | null;
  image_id: string;
  os_type: string;
  os_version: string;
  flavor: string | null;
  cpu_cores: number;
  memory_gb: number;
  memory_mb: number;
  storage_gb: number;
  ip_address: string | null;
  network_id: string | null;
  ssh_keys: string[];
  has_user_data: boolean;
  status_reason: string | null;
  created_at: string;
}

export interface VmImage {
  id: string;
  name: string;
  kind: string;
  os_type: string;
  os_version: string;
  status: string;
  min_disk_gb: number;
  min_memory_mb?: number | null;
}

export interface VmNetwork {
  id: string;
  name: string;
  cidr: string | null;
  status: string;
}

export interface VmSnapshot {
  id: string;
  name: string;
  vm_id: string;
  description: string;
  status: string;
  status_reason: string | null;
  created_at: string;
}

export interface VmBackup {
  id: string;
  name: string;
  vm_id: string | null;
  cpu_cores: number;
  memory_mb: number;
  storage_gb: number;
  size_bytes: number;
  status: string;
  status_reason: string | null;
  created_at: string;
}

export interface VmVolume {
  id: string;
  name: string;
  size_gb: number;
  vm_id: string | null;
  device: string | null;
  status: string;
  status_reason: string | null;
}

export interface QuoteLine {
  meter: string;
  unit: string;
  quantity: string;
  unit_price: string;
  amount: string;
  currency: string;
}

// --- containers' detail (actions, metrics, logs) and services (health, load tests) ---

export interface ContainerMetrics {
  cpu_usage: number;
  memory_usage: number;
  network_io: string;
  memory_bytes?: number;
  net_rx_bytes?: number;
  net_tx_bytes?: number;
  replicas_reporting?: number;
}

export interface ReplicaState {
  slot: number;
  state: string;
  host_id?: string | null;
  generation?: number;
}

export interface ContainerDetail extends Container {
  metrics?: ContainerMetrics | null;
  replica_states?: ReplicaState[];
}

export interface ContainerAccepted {
  message: string;
  container_id: string;
  container: ContainerDetail;
  operation: { id: string; status: string; url: string };
}

export interface ReplicaLogs {
  replica: number;
  state: string;
  logs: string;
}

export interface CheckResult {
  at: string;
  status: string;
  output: string;
  latency_ms?: number | null;
}

export interface ServiceInstance {
  id: string;
  slot: number;
  endpoint?: string | null;
  host?: string | null;
  state: string;
  health: string;
  maintenance_reason?: string | null;
  checks: { type: string; status: string; output: string; checked_at?: string | null; history: CheckResult[] }[];
  transitions: { at: string; from: string; to: string; output: string }[];
  metrics?: { cpu_usage?: number; memory_usage?: number; requests_per_second?: number; error_rate?: number; p95_response_time?: number };
}

export interface Service {
  id: string;
  name: string;
  kind: string;
  project_id: string;
  version?: string | null;
  endpoint?: string | null;
  health: string;
  instances: number | ServiceInstance[];
  passing?: number;
  tags: string[];
  metadata?: Record<string, string>;
  check?: Record<string, unknown> | null;
  created_at: string;
}

export interface LoadTestResults {
  total_requests?: number;
  successful_requests?: number;
  failed_requests?: number;
  avg_response_time?: number | null;
  min_response_time?: number | null;
  p50_response_time?: number | null;
  p90_response_time?: number | null;
  p95_response_time?: number | null;
  p99_response_time?: number | null;
  p99_9_response_time?: number | null;
  max_response_time?: number | null;
  requests_per_second?: number | null;
  error_rate?: number | null;
  elapsed_seconds?: number | null;
}

export interface LoadTest {
  id: string;
  test_id: string;
  status: string;
  scenario: string;
  target: string;
  params?: Record<string, unknown>;
  results: LoadTestResults;
  verdict?: { passed: boolean; thresholds: { threshold: string; value: number | null; passed: boolean }[] } | null;
  passed?: boolean | null;
  error?: { code?: string; message?: string } | null;
  started_at: string;
  completed_at?: string | null;
}

/** An invitation to a private listing (`/marketplace/listings/{id}/invitations`). */
export interface ListingInvitation {
  id: string;
  listing_id: string;
  organisation_id: string | null;
  email: string | null;
  status: "pending" | "accepted" | "revoked" | "expired";
  created_at: string;
  expires_at: string;
  accepted_at: string | null;
  revoked_at: string | null;
  /** An e-mail invitation's token, in the answer that made it only. */
  token?: string | null;
}

/** An image (`GET /images`): a VM's (kernel, qcow2 or raw) or a container's (docker). */
export interface ImageRow extends VmImage {
  format: string;
  description: string;
  project_id: string | null;
  public: boolean;
  source: string;
  size_bytes: number;
  status_reason: string | null;
  created_at: string;
}
