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
