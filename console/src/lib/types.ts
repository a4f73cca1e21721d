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
}

/** A VM as GET /vms/{id} gives it (Vm above is the overview's subset). */
export interface VmRecord extends Vm {
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

export interface Quote {
  id: string;
  currency: string;
  hours_per_month: number;
  lines: QuoteLine[];
  monthly_total: string;
  valid_until: string;
}

export interface Product {
  sku: string;
  name: string;
  flavor?: string | null;
  unit_price: string;
  currency: string;
}
